# gf-tokenize: text <-> RWKV World token ids (vocabulary file or the one in a GGUF).
add_executable(gf-tokenize ${CMAKE_CURRENT_SOURCE_DIR}/gf_tokenize.c)
target_link_libraries(gf-tokenize PRIVATE gfmodel)
