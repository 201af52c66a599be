# Checkpoint readers (.pth, .safetensors), GGUF v3 and gf-convert, on the real test vectors.
add_executable(model_checkpoint ${CMAKE_CURRENT_SOURCE_DIR}/model_checkpoint.c)
target_link_libraries(model_checkpoint PRIVATE gfmodel PkgConfig::CJSON)
add_test(NAME model_checkpoint COMMAND model_checkpoint ${GF_TESTDATA})
add_test(NAME model_checkpoint_robust COMMAND model_checkpoint ${GF_TESTDATA} robust)
set_tests_properties(model_checkpoint model_checkpoint_robust PROPERTIES SKIP_RETURN_CODE 77)
add_executable(model_gguf ${CMAKE_CURRENT_SOURCE_DIR}/model_gguf.c)
target_link_libraries(model_gguf PRIVATE gfmodel)
add_test(NAME model_gguf COMMAND model_gguf ${GF_TESTDATA})
add_test(NAME model_gguf_robust COMMAND model_gguf ${GF_TESTDATA} robust)
set_tests_properties(model_gguf model_gguf_robust PROPERTIES SKIP_RETURN_CODE 77)
add_test(NAME checkpoint_cli
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint_cli.sh $<TARGET_FILE:gf-convert> ${GF_TESTDATA})
set_tests_properties(checkpoint_cli PROPERTIES SKIP_RETURN_CODE 77)
