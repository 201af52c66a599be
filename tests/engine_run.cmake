# gf-run and the engine's invariants: feeding/interruption invariance, SIGKILL + resume,
# context + question against a full forward, and the CLI end to end. Models come from the
# real gf-convert --random in a fixture.
set(GF_ENGINE_RUN_DIR ${CMAKE_BINARY_DIR}/tests/engine_run)
set(GF_ENGINE_VOCAB ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt)

add_executable(engine_invariance ${CMAKE_CURRENT_LIST_DIR}/engine_invariance.c)
target_link_libraries(engine_invariance PRIVATE gfengine m)
add_executable(engine_question ${CMAKE_CURRENT_LIST_DIR}/engine_question.c)
target_link_libraries(engine_question PRIVATE gfengine m)
add_executable(engine_slices ${CMAKE_CURRENT_LIST_DIR}/engine_slices.c)
target_link_libraries(engine_slices PRIVATE gfengine)
add_executable(engine_dump ${CMAKE_CURRENT_LIST_DIR}/engine_dump.c)
target_link_libraries(engine_dump PRIVATE gfcache)

# text: the World vocabulary embedded (ingest of text, ask); ids: token ids only; rope and
# odd: a RoPE model and an odd shape (5 layers, ratio 4, C 192: 3 heads of 64).
add_test(NAME engine_run_models
         COMMAND sh -c "rm -rf \"$1\" && mkdir -p \"$1\" &&
                 \"$0\" --random --layers 3 --embd 64 --vocab 65536 --seed 11 --vocab-file \"$2\" \"$1/text.gguf\" 2>/dev/null &&
                 \"$0\" --random --layers 4 --embd 128 --vocab 500 --seed 12 \"$1/ids.gguf\" 2>/dev/null &&
                 \"$0\" --random --layers 7 --embd 320 --vocab 1000 --ratio 3 --rope-base 10000 --seed 13 \"$1/rope.gguf\" 2>/dev/null &&
                 \"$0\" --random --layers 5 --embd 192 --vocab 300 --ratio 4 --seed 14 \"$1/odd.gguf\" 2>/dev/null"
                 $<TARGET_FILE:gf-convert> ${GF_ENGINE_RUN_DIR}/models ${GF_ENGINE_VOCAB})
set_tests_properties(engine_run_models PROPERTIES FIXTURES_SETUP engine_run_models)

add_test(NAME engine_invariance
         COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" \"$1\" \"$2\""
                 $<TARGET_FILE:engine_invariance> ${GF_ENGINE_RUN_DIR}/models/ids.gguf
                 ${GF_ENGINE_RUN_DIR}/invariance)
foreach(model rope odd)
  add_test(NAME engine_question_${model}
           COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" \"$1\" \"$2\""
                   $<TARGET_FILE:engine_question> ${GF_ENGINE_RUN_DIR}/models/${model}.gguf
                   ${GF_ENGINE_RUN_DIR}/question_${model})
  set_tests_properties(engine_question_${model} PROPERTIES FIXTURES_REQUIRED engine_run_models)
endforeach()
# The same with keys and values in bf16, the engines' default: the tier changes no bit.
add_test(NAME engine_question_odd_bf16kv
         COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" \"$1\" \"$2\" bf16"
                 $<TARGET_FILE:engine_question> ${GF_ENGINE_RUN_DIR}/models/odd.gguf
                 ${GF_ENGINE_RUN_DIR}/question_odd_bf16kv)
set_tests_properties(engine_question_odd_bf16kv PROPERTIES FIXTURES_REQUIRED engine_run_models)
# A question without a context equals an ingest of it; slices of a question change no bit.
add_test(NAME engine_slices
         COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" \"$1\" \"$2\""
                 $<TARGET_FILE:engine_slices> ${GF_ENGINE_RUN_DIR}/models/odd.gguf
                 ${GF_ENGINE_RUN_DIR}/slices)
set_tests_properties(engine_slices PROPERTIES FIXTURES_REQUIRED engine_run_models TIMEOUT 300)
add_test(NAME engine_sigkill
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/engine_sigkill.sh $<TARGET_FILE:gf-run>
                 $<TARGET_FILE:engine_dump> ${GF_ENGINE_RUN_DIR}/models/text.gguf
                 ${GF_ENGINE_VOCAB} ${GF_ENGINE_RUN_DIR}/sigkill)
add_test(NAME engine_cli
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/engine_cli.sh $<TARGET_FILE:gf-run>
                 $<TARGET_FILE:engine_dump> ${GF_ENGINE_RUN_DIR}/models/text.gguf
                 ${GF_ENGINE_RUN_DIR}/cli)
set_tests_properties(engine_invariance engine_sigkill engine_cli PROPERTIES
                     FIXTURES_REQUIRED engine_run_models)
set_tests_properties(engine_invariance engine_question_rope engine_question_odd engine_sigkill
                     engine_cli PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
# Snapshots of format 1.0 read and resumed; contexts continued only in their compute mode.
add_executable(engine_snapshot ${CMAKE_CURRENT_LIST_DIR}/engine_snapshot.c)
target_link_libraries(engine_snapshot PRIVATE gfengine)
add_test(NAME engine_snapshot
         COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" \"$1\" \"$2\""
                 $<TARGET_FILE:engine_snapshot> ${GF_ENGINE_RUN_DIR}/models/odd.gguf
                 ${GF_ENGINE_RUN_DIR}/snapshot)
set_tests_properties(engine_snapshot PROPERTIES FIXTURES_REQUIRED engine_run_models)
# Sessions stepped together (gfe_sessions_step) against each stepped alone: caps of 1 to 16,
# sessions joining and leaving, 1 and 2 threads, keys and values in bf16 (the default) and f32.
add_executable(engine_batch ${CMAKE_CURRENT_LIST_DIR}/engine_batch.c)
target_link_libraries(engine_batch PRIVATE gfengine)
foreach(model odd rope)
  foreach(kv bf16 f32)
    add_test(NAME engine_batch_${model}_${kv}
             COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" \"$1\" \"$2\" $3"
                     $<TARGET_FILE:engine_batch> ${GF_ENGINE_RUN_DIR}/models/${model}.gguf
                     ${GF_ENGINE_RUN_DIR}/batch_${model}_${kv} ${kv})
    set_tests_properties(engine_batch_${model}_${kv} PROPERTIES FIXTURES_REQUIRED engine_run_models)
  endforeach()
endforeach()
# Under AVX2 kernels too (the scalar kernels are held to the same bits by model_batch; here
# they would take minutes).
foreach(isa avx2)
  add_test(NAME engine_batch_odd_${isa}
           COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$0\" \"$1\" \"$2\" bf16"
                   $<TARGET_FILE:engine_batch> ${GF_ENGINE_RUN_DIR}/models/odd.gguf
                   ${GF_ENGINE_RUN_DIR}/batch_odd_${isa})
  set_tests_properties(engine_batch_odd_${isa} PROPERTIES FIXTURES_REQUIRED engine_run_models
                       ENVIRONMENT "GOLDFINCH_ISA=${isa}")
endforeach()
