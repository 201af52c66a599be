# gf-convert: official checkpoints (.pth, .safetensors) or seeded random models -> GGUF v3.
add_executable(gf-convert ${CMAKE_CURRENT_SOURCE_DIR}/gf_convert.c)
target_link_libraries(gf-convert PRIVATE gfmodel)
