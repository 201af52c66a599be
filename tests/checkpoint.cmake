# Checkpoint readers (.pth, .safetensors), GGUF v3 and gf-convert, on the real test vectors.
add_executable(model_checkpoint ${CMAKE_CURRENT_SOURCE_DIR}/model_checkpoint.c)
target_link_libraries(model_checkpoint PRIVATE gfmodel PkgConfig::CJSON)
add_test(NAME model_checkpoint COMMAND model_checkpoint ${GF_TESTDATA})
add_test(NAME model_checkpoint_robust COMMAND model_checkpoint ${GF_TESTDATA} robust)
set_tests_properties(model_checkpoint model_checkpoint_robust PROPERTIES SKIP_RETURN_CODE 77)
