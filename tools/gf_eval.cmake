add_executable(gf-eval ${CMAKE_CURRENT_LIST_DIR}/gf_eval.c)
target_link_libraries(gf-eval PRIVATE gfmodel)
