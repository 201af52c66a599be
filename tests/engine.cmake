# The engine (ingest, sessions, paged decode) against the reference vectors, on real files.
add_executable(engine_exact ${CMAKE_CURRENT_LIST_DIR}/engine_exact.c)
target_link_libraries(engine_exact PRIVATE gfengine)
foreach(case a1 a2 a3)
  set(dir ${CMAKE_BINARY_DIR}/tests/engine_${case})
  add_test(NAME engine_exact_${case}
           COMMAND sh -c "rm -rf \"$3\" && mkdir -p \"$3\" && \"$0\" \"$1\" \"$3/m.gguf\" && \"$2\" \"$3/m.gguf\" \"$4\" \"$3\""
                   $<TARGET_FILE:gf-convert> ${GF_TESTDATA}/goldfinch/${case}/model.pth
                   $<TARGET_FILE:engine_exact> ${dir} ${GF_TESTDATA}/goldfinch/${case})
endforeach()
