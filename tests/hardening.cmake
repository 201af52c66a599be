# Hardening: faults on the ingest and commit path, load, a full disk, security.
#
# hardening_fault drives the engine directly, linked against gfcache_fi (the cache store with
# CS_FAULT_INJECTION) and with malloc and friends wrapped at link time, so that every
# allocation, read, write, fsync and rename of the scenario can be failed by its id.
add_library(hardening_engine_fi STATIC EXCLUDE_FROM_ALL ${CMAKE_SOURCE_DIR}/daemon/engine.c)
target_include_directories(hardening_engine_fi PUBLIC ${CMAKE_SOURCE_DIR}/daemon)
target_link_libraries(hardening_engine_fi PUBLIC gfmodel gfcache_fi Threads::Threads)

add_executable(hardening_fault ${CMAKE_CURRENT_LIST_DIR}/hardening_fault.c)
target_link_libraries(hardening_fault PRIVATE hardening_engine_fi)
target_link_options(hardening_fault PRIVATE
  "LINKER:--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign"
  "LINKER:--wrap=aligned_alloc,--wrap=strdup,--wrap=cs_store_open")

set(hardening_fault_dir ${CMAKE_BINARY_DIR}/tests/hardening_fault_work)
# Every id fails in process and every I/O step crashes a child (about 40 s); under
# sanitizers, where each run costs several times more, every second id and every eighth
# I/O step.
if(GF_SANITIZE)
  set(hardening_fault_strides 2 8)
else()
  set(hardening_fault_strides 1 1)
endif()
add_test(NAME hardening_fault
  COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" --random --layers 3 --embd 64 --vocab 65536 --seed 5 --vocab-file \"$3\" \"$2/m.gguf\" >/dev/null && \"$1\" \"$2/m.gguf\" \"$2\" $4 $5"
          $<TARGET_FILE:gf-convert> $<TARGET_FILE:hardening_fault> ${hardening_fault_dir}
          ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt ${hardening_fault_strides})
set_tests_properties(hardening_fault PROPERTIES TIMEOUT 420 LABELS hardening)

# The daemon under load, on a full disk, against hostile input: tests/hardening_daemon.py,
# a Python client of the wire protocol (daemon_lib.py), each case on its own daemon.
if(NOT GF_DAEMON_PYTHON)
  set(GF_DAEMON_PYTHON /usr/bin/python3)
endif()
set(hardening_env
  GOLDFINCHD=$<TARGET_FILE:goldfinchd>
  GF_CONVERT=$<TARGET_FILE:gf-convert>
  GF_VOCAB=${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt
  GF_PROTO_PYTHON_DIR=${GF_PROTO_PYTHON_DIR}
  HARDENING_WORK=${CMAKE_BINARY_DIR}/tests/hardening_work)
foreach(case load diskfull security)
  add_test(NAME hardening_${case}
           COMMAND ${GF_DAEMON_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/hardening_daemon.py ${case})
  set_tests_properties(hardening_${case} PROPERTIES ENVIRONMENT "${hardening_env}"
                       SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS hardening)
endforeach()
