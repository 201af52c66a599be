# Client side of the protocol: libgfclient against a scripted fake server (client_unit),
# gf and the Python client against a fake server in Python (client_cli), and both against
# the real goldfinchd when it is built (client_e2e).
add_executable(client_unit ${CMAKE_CURRENT_LIST_DIR}/client_unit.c)
target_link_libraries(client_unit PRIVATE gfclient Threads::Threads)
add_test(NAME client_unit COMMAND client_unit)
set_tests_properties(client_unit PROPERTIES TIMEOUT 60 LABELS client)

# gf and gf_client.py against the fake server in Python (Debian's python3 + protobuf).
add_test(NAME client_cli
	 COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/client_cli.sh $<TARGET_FILE:gf>
		 ${CMAKE_SOURCE_DIR}/client/gf_client.py ${CMAKE_CURRENT_LIST_DIR}/client_fake_server.py
		 ${GF_PROTO_PYTHON_DIR})
set_tests_properties(client_cli PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120 LABELS client)

# End to end on the real daemon, once it is built: a small random model made once (the
# client_model fixture), then gf, gf_client.py and gf-run on the same inputs.
if(TARGET goldfinchd AND TARGET gf-convert AND TARGET gf-run)
  set(GF_CLIENT_E2E_DIR ${CMAKE_CURRENT_BINARY_DIR}/client_e2e)
  add_test(NAME client_model
	   COMMAND sh -c "mkdir -p \"$1\" && \"$0\" --random --layers 4 --embd 128 --vocab 65536 --vocab-file \"$2\" --threads 2 \"$1/model.gguf\""
		   $<TARGET_FILE:gf-convert> ${GF_CLIENT_E2E_DIR}
		   ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt)
  set_tests_properties(client_model PROPERTIES FIXTURES_SETUP client_model TIMEOUT 60
		       LABELS client)
  add_test(NAME client_e2e
	   COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/client_e2e.sh $<TARGET_FILE:gf>
		   ${CMAKE_SOURCE_DIR}/client/gf_client.py $<TARGET_FILE:goldfinchd>
		   $<TARGET_FILE:gf-run> ${GF_CLIENT_E2E_DIR}/model.gguf ${GF_PROTO_PYTHON_DIR})
  set_tests_properties(client_e2e PROPERTIES FIXTURES_REQUIRED client_model SKIP_RETURN_CODE 77
		       TIMEOUT 180 LABELS client)
endif()
