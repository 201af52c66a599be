add_executable(partition_plan ${CMAKE_CURRENT_LIST_DIR}/partition_plan.c)
target_link_libraries(partition_plan PRIVATE gfpartition)
add_test(NAME partition_plan COMMAND partition_plan)
# goldfinchd --print-plan on a random model of tests/model.cmake.
add_test(NAME partition_print_plan
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/partition_print_plan.sh $<TARGET_FILE:goldfinchd>
                 ${CMAKE_BINARY_DIR}/tests/random/odd5.gguf)
set_tests_properties(partition_print_plan PROPERTIES FIXTURES_REQUIRED random_odd5)
