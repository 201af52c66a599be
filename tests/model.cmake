# The engine against the reference vectors, by library calls and through the CLI tools.
add_executable(model_forward ${CMAKE_CURRENT_LIST_DIR}/model_forward.c)
target_link_libraries(model_forward PRIVATE gfmodel)
add_executable(model_random ${CMAKE_CURRENT_LIST_DIR}/model_random.c)
target_link_libraries(model_random PRIVATE gfmodel)
add_executable(model_kernels ${CMAKE_CURRENT_LIST_DIR}/model_kernels.c)
target_link_libraries(model_kernels PRIVATE gfmodel m)
add_test(NAME model_kernels COMMAND model_kernels)
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

# A pipeline boundary that moves between two ranks keeps the bits.
add_executable(model_split ${CMAKE_CURRENT_LIST_DIR}/model_split.c)
target_link_libraries(model_split PRIVATE gfmodel)
add_test(NAME model_split_make
         COMMAND sh -c "mkdir -p ${GF_RANDOM_DIR} && \"$0\" --random \"$@\""
                 $<TARGET_FILE:gf-convert> --layers 4 --embd 256 --vocab 300 --ratio 2 --seed 5
                 ${GF_RANDOM_DIR}/split4.gguf)
set_tests_properties(model_split_make PROPERTIES FIXTURES_SETUP random_split4)
add_test(NAME model_split COMMAND model_split ${GF_RANDOM_DIR}/split4.gguf ${GF_RANDOM_DIR}/tiny3.gguf)
set_tests_properties(model_split PROPERTIES FIXTURES_REQUIRED "random_split4;random_tiny3")

# bf16 compute through oneDNN: its layout, rows and threads, and the references within bf16's
# error (skipped where the build has no oneDNN or the CPU no AVX512-BF16).
add_executable(model_bf16 ${CMAKE_CURRENT_LIST_DIR}/model_bf16.c)
target_link_libraries(model_bf16 PRIVATE gfmodel m)
add_test(NAME model_bf16 COMMAND model_bf16 ${GF_TESTDATA}/goldfinch/a1 ${GF_TESTDATA}/goldfinch/a2
                                 ${GF_TESTDATA}/goldfinch/a3)
set_tests_properties(model_bf16 PROPERTIES SKIP_RETURN_CODE 77)

# The path of a CPU without AVX-512: the kernels capped at AVX2 (GOLDFINCH_ISA), OpenBLAS on its
# Haswell kernels, and bf16 compute asked for but unavailable there (the loads fall back to
# f32): the references still hold at the f32 tolerance. model_random checks the bits of every
# kernel set against this CPU's best.
foreach(case a1 a2)
  add_test(NAME model_forward_${case}_no_avx512 COMMAND model_forward ${GF_TESTDATA}/goldfinch/${case})
  set_tests_properties(model_forward_${case}_no_avx512 PROPERTIES ENVIRONMENT
                       "GOLDFINCH_ISA=avx2;OPENBLAS_CORETYPE=Haswell;GOLDFINCH_COMPUTE=bf16")
endforeach()
add_test(NAME model_forward_a1_scalar COMMAND model_forward ${GF_TESTDATA}/goldfinch/a1)
set_tests_properties(model_forward_a1_scalar PROPERTIES ENVIRONMENT "GOLDFINCH_ISA=scalar")
# Split against whole with bf16 compute (oneDNN's tasks are rows of 64: the step of a split).
# Where bf16 compute is unavailable the loads fall back to f32 and this repeats model_split.
add_test(NAME model_split_bf16 COMMAND model_split ${GF_RANDOM_DIR}/split4.gguf ${GF_RANDOM_DIR}/tiny3.gguf)
set_tests_properties(model_split_bf16 PROPERTIES FIXTURES_REQUIRED "random_split4;random_tiny3"
                     ENVIRONMENT "GOLDFINCH_COMPUTE=bf16")

# A batched decode step gives each sequence the bits of its step alone: batches of 1 to 16
# with sequences joining and leaving, 1 and 2 threads, on the kernels of every instruction set
# and in bf16 compute (where unavailable the load falls back to f32 and this repeats the f32
# case).
add_executable(model_batch ${CMAKE_CURRENT_LIST_DIR}/model_batch.c)
target_link_libraries(model_batch PRIVATE gfmodel)
foreach(name tiny3 odd5 rope7 bf16)
  add_test(NAME model_batch_${name} COMMAND model_batch ${GF_RANDOM_DIR}/${name}.gguf)
  set_tests_properties(model_batch_${name} PROPERTIES FIXTURES_REQUIRED random_${name})
endforeach()
foreach(isa avx2 scalar)
  add_test(NAME model_batch_odd5_${isa} COMMAND model_batch ${GF_RANDOM_DIR}/odd5.gguf)
  set_tests_properties(model_batch_odd5_${isa} PROPERTIES FIXTURES_REQUIRED random_odd5
                       ENVIRONMENT "GOLDFINCH_ISA=${isa}")
endforeach()
foreach(name odd5 bf16)
  add_test(NAME model_batch_${name}_compute_bf16 COMMAND model_batch ${GF_RANDOM_DIR}/${name}.gguf)
  set_tests_properties(model_batch_${name}_compute_bf16 PROPERTIES FIXTURES_REQUIRED random_${name}
                       ENVIRONMENT "GOLDFINCH_COMPUTE=bf16")
endforeach()
