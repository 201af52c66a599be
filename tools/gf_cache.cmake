# gf-cache: ls, verify, rm, gc and bench of a cache store directory (cache_store/README.md).
add_executable(gf-cache ${CMAKE_CURRENT_SOURCE_DIR}/gf_cache.c)
target_link_libraries(gf-cache PRIVATE gfcache gfmodel m)
