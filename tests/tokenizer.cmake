# Tokenizer (model/vocab.c, model/tokenizer.c), sampling (model/sampling.c) and gf-tokenize.
add_executable(model_tokenizer ${CMAKE_CURRENT_SOURCE_DIR}/model_tokenizer.c)
target_link_libraries(model_tokenizer PRIVATE gfmodel PkgConfig::CJSON)
add_test(NAME model_tokenizer
	 COMMAND model_tokenizer ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt
		 ${GF_TESTDATA}/tokenizer/cases.jsonl)

add_executable(model_sampling ${CMAKE_CURRENT_SOURCE_DIR}/model_sampling.c)
target_link_libraries(model_sampling PRIVATE gfmodel m)
add_test(NAME model_sampling COMMAND model_sampling)

# With gf-convert built too, --model is checked on a GGUF that embeds the vocabulary.
set(GF_TOKENIZE_CONVERT "")
if(TARGET gf-convert)
  set(GF_TOKENIZE_CONVERT $<TARGET_FILE:gf-convert>)
endif()
add_test(NAME tools_tokenize
	 COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tools_tokenize.sh $<TARGET_FILE:gf-tokenize>
		 ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt
		 ${GF_TESTDATA}/tokenizer/cases.jsonl ${GF_TOKENIZE_CONVERT})

set_tests_properties(model_tokenizer model_sampling tools_tokenize PROPERTIES
		     SKIP_RETURN_CODE 77 TIMEOUT 120)
