add_executable(partition_plan ${CMAKE_CURRENT_LIST_DIR}/partition_plan.c)
target_link_libraries(partition_plan PRIVATE gfpartition)
add_test(NAME partition_plan COMMAND partition_plan)
