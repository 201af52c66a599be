# gf-run: ingest text into the paged cache store, list contexts, ask questions (engine.h).
add_executable(gf-run ${CMAKE_CURRENT_SOURCE_DIR}/gf_run.c)
target_link_libraries(gf-run PRIVATE gfengine gfcache gfmodel gfclient m)
