# goldfinchd end to end: the real daemon on a temporary unix socket and a free TCP port,
# with a small random model, driven over the wire by a Python client (Debian's
# python3-protobuf, hence /usr/bin/python3: the python3 first on PATH may lack it).
# daemon_setup makes the model, texts and reference answers (daemon_ref: the engine
# directly; gf-run when built) and starts the shared daemon; daemon_cleanup stops it with
# SIGTERM and checks a clean exit. Cases that need their own daemon start it themselves.
add_executable(daemon_ref ${CMAKE_CURRENT_LIST_DIR}/daemon_ref.c)
target_link_libraries(daemon_ref PRIVATE gfengine)

set(GF_DAEMON_PYTHON /usr/bin/python3 CACHE FILEPATH "Python with python3-protobuf for the daemon tests")
set(gf_daemon_env
  GOLDFINCHD=$<TARGET_FILE:goldfinchd>
  GF_CONVERT=$<TARGET_FILE:gf-convert>
  DAEMON_REF=$<TARGET_FILE:daemon_ref>
  GF_VOCAB=${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt
  GF_PROTO_PYTHON_DIR=${GF_PROTO_PYTHON_DIR}
  DAEMON_WORK=${CMAKE_BINARY_DIR}/tests/daemon_work)
if(TARGET gf-run)
  list(APPEND gf_daemon_env GF_RUN=$<TARGET_FILE:gf-run>)
endif()

function(gf_daemon_test case)
  add_test(NAME daemon_${case}
           COMMAND ${GF_DAEMON_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/daemon_test.py ${case})
  set_tests_properties(daemon_${case} PROPERTIES ENVIRONMENT "${gf_daemon_env}"
                       SKIP_RETURN_CODE 77 TIMEOUT 180 LABELS daemon ${ARGN})
endfunction()

gf_daemon_test(setup FIXTURES_SETUP daemon)
gf_daemon_test(cleanup FIXTURES_CLEANUP daemon)
foreach(case hello ingest_generate codebase status_memory no_context_progress list_drop cancel cancel_job
             bad_input clients64 metrics
             limits disk_budget backpressure auth restart_sigterm restart_sigkill)
  gf_daemon_test(${case} FIXTURES_REQUIRED daemon)
endforeach()
