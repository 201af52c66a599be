# goldfinchd --http end to end (tests/http_test.py): Python's standard library and curl as
# the clients, gf beside them for the answers and contexts the API must equal. Each case
# starts its own daemon with the shipped byte model on a Unix socket and a free HTTP port.
if(TARGET goldfinchd AND TARGET gf AND TARGET gf-run)
  set(gf_http_env
    GOLDFINCHD=$<TARGET_FILE:goldfinchd>
    GF=$<TARGET_FILE:gf>
    GF_RUN=$<TARGET_FILE:gf-run>
    MODEL=${CMAKE_SOURCE_DIR}/models/goldfinch-byte.gguf
    WORK=${CMAKE_BINARY_DIR}/tests/http_work
    NODE_DIR=${CMAKE_BINARY_DIR}/tests/node
    CHROMIUM=/usr/bin/chromium)
  # browser (the web page in headless Chromium through puppeteer-core) and openai_sdk
  # (OpenAI's Node SDK) install their npm packages into tests/node of the build tree.
  foreach(case routes auth limits ask_equal tar_ingest clients64 no_context progress web_page
          browser openai_sdk)
    add_test(NAME http_${case} COMMAND python3 ${CMAKE_CURRENT_LIST_DIR}/http_test.py ${case})
    set_tests_properties(http_${case} PROPERTIES ENVIRONMENT "${gf_http_env}"
                         SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS http)
  endforeach()
endif()
