# cache_store tests. Each program loops over the I/O modes the machine has (io_uring and
# pread, O_DIRECT and buffered) and exits 0 pass, 1 fail, 77 skip. Stores live in
# temporary directories under the build tree (CS_TEST_TMPDIR overrides).
add_library(cstest STATIC EXCLUDE_FROM_ALL ${CMAKE_CURRENT_SOURCE_DIR}/cache_store_common.c)
target_link_libraries(cstest PUBLIC gfcache m)
target_compile_definitions(cstest PRIVATE CS_TEST_TMP="${CMAKE_CURRENT_BINARY_DIR}/cs_tmp")

# cstest against the fault-injection build of the library, for the crash tests.
add_library(cstest_fi STATIC EXCLUDE_FROM_ALL ${CMAKE_CURRENT_SOURCE_DIR}/cache_store_common.c)
target_link_libraries(cstest_fi PUBLIC gfcache_fi m)
target_compile_definitions(cstest_fi PRIVATE CS_TEST_TMP="${CMAKE_CURRENT_BINARY_DIR}/cs_tmp")

function(gf_cache_store_test name lib timeout)
  add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/${name}.c)
  target_link_libraries(${name} PRIVATE ${lib})
  target_compile_definitions(${name} PRIVATE
    CS_TEST_DATA="${CMAKE_CURRENT_SOURCE_DIR}/data")
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT ${timeout} LABELS cache_store)
endfunction()

gf_cache_store_test(cache_store_roundtrip cstest 60)
gf_cache_store_test(cache_store_checkpoint cstest 60)
gf_cache_store_test(cache_store_branch cstest 60)
gf_cache_store_test(cache_store_concurrent cstest 60)
gf_cache_store_test(cache_store_budget cstest 60)
gf_cache_store_test(cache_store_bitflip cstest 60)
gf_cache_store_test(cache_store_fault cstest_fi 120)
gf_cache_store_test(cache_store_sigkill cstest 120)
gf_cache_store_test(cache_store_format cstest 60)
gf_cache_store_test(cache_store_fallback cstest 60)

add_test(NAME cache_store_tool
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/cache_store_tool.sh $<TARGET_FILE:gf-cache>
          ${CMAKE_CURRENT_SOURCE_DIR}/data/cache_store_v1.0 ${CMAKE_CURRENT_BINARY_DIR}/cs_tmp)
set_tests_properties(cache_store_tool PROPERTIES TIMEOUT 60 LABELS cache_store)
gf_cache_store_test(cache_store_stream cstest 60)
target_include_directories(cache_store_stream PRIVATE ${CMAKE_SOURCE_DIR}/cache_store)

# gf-cache verify in a loop beside a daemon that checkpoints often and drops contexts: never
# a false report of damage (ITERATIONS=10000 sh tests/cache_store_verify_live.sh ... for the
# long run).
if(TARGET goldfinchd AND TARGET gf AND TARGET gf-convert)
  add_test(NAME cache_store_verify_live
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/cache_store_verify_live.sh $<TARGET_FILE:gf-cache>
            $<TARGET_FILE:goldfinchd> $<TARGET_FILE:gf> $<TARGET_FILE:gf-convert>
            ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt 20)
  set_tests_properties(cache_store_verify_live PROPERTIES TIMEOUT 120 LABELS cache_store)
endif()
