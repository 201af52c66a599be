add_executable(gf-bench ${CMAKE_CURRENT_LIST_DIR}/gf_bench.c ${CMAKE_CURRENT_LIST_DIR}/bench_util.c)
target_link_libraries(gf-bench PRIVATE gfmodel)
target_compile_options(gf-bench PRIVATE -O3)
