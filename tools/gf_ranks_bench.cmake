# gf-ranks-bench: ingest tokens/s and pipeline efficiency, one process or P MPI ranks.
# A benchmark, not a test; tools/bench-ranks.sh runs the comparison.
add_executable(gf-ranks-bench ${CMAKE_CURRENT_LIST_DIR}/gf_ranks_bench.c ${CMAKE_CURRENT_LIST_DIR}/bench_util.c)
target_link_libraries(gf-ranks-bench PRIVATE gfdaemon)
target_compile_options(gf-ranks-bench PRIVATE -O3)
