# The multi-rank daemon: the same answers from 1, 2, 3 and 4 MPI ranks.
add_executable(ranks_exact ${CMAKE_CURRENT_LIST_DIR}/ranks_exact.c)
target_link_libraries(ranks_exact PRIVATE gfdaemon)
foreach(case a1 a2)
  add_test(NAME ranks_exact_${case}
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/ranks_exact.sh $<TARGET_FILE:ranks_exact>
                   $<TARGET_FILE:gf-convert> ${CMAKE_BINARY_DIR}/tests/ranks_${case}
                   --ref ${GF_TESTDATA}/goldfinch/${case})
  set_tests_properties(ranks_exact_${case} PROPERTIES TIMEOUT 300 PROCESSORS 2)
endforeach()
add_test(NAME ranks_exact_random
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/ranks_exact.sh $<TARGET_FILE:ranks_exact>
                 $<TARGET_FILE:gf-convert> ${CMAKE_BINARY_DIR}/tests/ranks_random --random)
set_tests_properties(ranks_exact_random PROPERTIES TIMEOUT 300 PROCESSORS 2)
add_test(NAME ranks_exact_boundary
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/ranks_exact.sh $<TARGET_FILE:ranks_exact>
                 $<TARGET_FILE:gf-convert> ${CMAKE_BINARY_DIR}/tests/ranks_boundary --boundary)
set_tests_properties(ranks_exact_boundary PROPERTIES TIMEOUT 300 PROCESSORS 2)
add_test(NAME ranks_daemon
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/ranks_daemon.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR}
                 ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt
                 ${CMAKE_BINARY_DIR}/tests/ranks_daemon)
set_tests_properties(ranks_daemon PROPERTIES TIMEOUT 600 PROCESSORS 2)
add_test(NAME ranks_fault
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/ranks_fault.sh $<TARGET_FILE:ranks_exact>
                 $<TARGET_FILE:gf-convert> ${CMAKE_BINARY_DIR}/tests/ranks_fault)
set_tests_properties(ranks_fault PROPERTIES TIMEOUT 1200 PROCESSORS 2 LABELS fault)
