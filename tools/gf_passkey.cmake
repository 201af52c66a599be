# gf-passkey: pass-key retrieval through the engine: the CTest passkey test at
# 100,000 tokens and the 1,000,000-token benchmark (tests/passkey.cmake).
add_executable(gf-passkey ${CMAKE_CURRENT_SOURCE_DIR}/gf_passkey.c)
target_link_libraries(gf-passkey PRIVATE gfengine gfcache gfmodel m)
