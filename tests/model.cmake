# The engine against the reference vectors, by library calls and through the CLI tools.
add_executable(model_forward ${CMAKE_CURRENT_LIST_DIR}/model_forward.c)
target_link_libraries(model_forward PRIVATE gfmodel)
add_executable(model_random ${CMAKE_CURRENT_LIST_DIR}/model_random.c)
target_link_libraries(model_random PRIVATE gfmodel)
add_executable(model_vecmath ${CMAKE_CURRENT_LIST_DIR}/model_vecmath.c)
target_link_libraries(model_vecmath PRIVATE gfmodel m)
add_test(NAME model_vecmath COMMAND model_vecmath)
add_executable(f32_compare ${CMAKE_CURRENT_LIST_DIR}/f32_compare.c)
target_link_libraries(f32_compare PRIVATE m)

foreach(case a1 a2 a3)
  add_test(NAME model_forward_${case} COMMAND model_forward ${GF_TESTDATA}/goldfinch/${case})
  add_test(NAME tools_eval_${case}
           COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/tools_eval.sh ${CMAKE_BINARY_DIR} ${GF_TESTDATA}/goldfinch/${case})
endforeach()
add_test(NAME model_forward_a3_safetensors
         COMMAND model_forward ${GF_TESTDATA}/goldfinch/a3 model.safetensors)

# Random models of odd shapes, made by the real gf-convert: no shape is special.
set(GF_RANDOM_DIR ${CMAKE_BINARY_DIR}/tests/random)
function(gf_random_model_test name)
  add_test(NAME model_random_make_${name}
           COMMAND sh -c "mkdir -p ${GF_RANDOM_DIR} && \"$0\" --random \"$@\""
                   $<TARGET_FILE:gf-convert> ${ARGN} ${GF_RANDOM_DIR}/${name}.gguf)
  set_tests_properties(model_random_make_${name} PROPERTIES FIXTURES_SETUP random_${name})
  add_test(NAME model_random_${name} COMMAND model_random ${GF_RANDOM_DIR}/${name}.gguf)
  set_tests_properties(model_random_${name} PROPERTIES FIXTURES_REQUIRED random_${name})
endfunction()
gf_random_model_test(odd5 --layers 5 --embd 192 --vocab 300 --ratio 4)
gf_random_model_test(tiny3 --layers 3 --embd 64 --vocab 97 --ratio 2)
gf_random_model_test(rope7 --layers 7 --embd 320 --vocab 1000 --ratio 3 --rope-base 10000)
gf_random_model_test(head48 --layers 4 --embd 48 --vocab 50 --ratio 3 --seed 7)
gf_random_model_test(bf16 --layers 6 --embd 128 --vocab 256 --ratio 3 --dtype bf16)

# A pipeline boundary that moves between two ranks keeps the bits (issue 6).
add_executable(model_split ${CMAKE_CURRENT_LIST_DIR}/model_split.c)
target_link_libraries(model_split PRIVATE gfmodel)
add_test(NAME model_split_make
         COMMAND sh -c "mkdir -p ${GF_RANDOM_DIR} && \"$0\" --random \"$@\""
                 $<TARGET_FILE:gf-convert> --layers 4 --embd 256 --vocab 300 --ratio 2 --seed 5
                 ${GF_RANDOM_DIR}/split4.gguf)
set_tests_properties(model_split_make PROPERTIES FIXTURES_SETUP random_split4)
add_test(NAME model_split COMMAND model_split ${GF_RANDOM_DIR}/split4.gguf ${GF_RANDOM_DIR}/tiny3.gguf)
set_tests_properties(model_split PROPERTIES FIXTURES_REQUIRED "random_split4;random_tiny3")
