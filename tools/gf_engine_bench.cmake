# gf-engine-bench: the engine's memory, cache size, reuse and decode figures. A
# benchmark, not a test: not registered in CTest. tools/bench-engine.sh runs every command.
add_executable(gf-engine-bench ${CMAKE_CURRENT_LIST_DIR}/gf_engine_bench.c ${CMAKE_CURRENT_LIST_DIR}/bench_util.c)
target_link_libraries(gf-engine-bench PRIVATE gfengine PkgConfig::CJSON)
target_compile_options(gf-engine-bench PRIVATE -O3)
