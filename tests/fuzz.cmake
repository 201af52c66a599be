# Fuzz targets of the parsers (tests/fuzz/README.md): one libFuzzer entry point per parser,
# a committed seed corpus per target in tests/fuzz/corpus/<target>/.
#
# -DGF_FUZZ=ON (clang, with -DGF_SANITIZE=address,undefined) builds them with libFuzzer,
# the libraries they reach instrumented with -fsanitize=fuzzer-no-link, and registers one
# smoke test per target (label fuzz): its corpus plus GF_FUZZ_RUNS generated inputs, at most
# GF_FUZZ_SECONDS (about 35 s for the ten targets at -j2).
# Without it (gcc, plain or ASan) the same targets link replay_main.c and one test per
# target (label fuzz_replay) replays the committed corpus once: the seeds and the
# regression inputs of fixed crashes stay checked in every build.
option(GF_FUZZ "Build the libFuzzer targets (clang, with -DGF_SANITIZE=address,undefined)" OFF)
set(GF_FUZZ_RUNS 10000 CACHE STRING "Generated inputs per fuzz smoke test")
set(GF_FUZZ_SECONDS 10 CACHE STRING "Time limit of the generated inputs per fuzz smoke test")

set(GF_FUZZ_DIR ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
if(GF_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "GF_FUZZ=ON needs clang (libFuzzer): -DCMAKE_C_COMPILER=clang")
  endif()
  if(NOT GF_SANITIZE MATCHES "address")
    message(FATAL_ERROR "GF_FUZZ=ON needs -DGF_SANITIZE=address,undefined (the whole build, "
                        "libraries included, is instrumented)")
  endif()
  # cache_store/CMakeLists.txt gives cs_shuffle.c a gcc-only flag; clang vectorises at -O2.
  set_source_files_properties(${CMAKE_SOURCE_DIR}/cache_store/cs_shuffle.c
    DIRECTORY ${CMAKE_SOURCE_DIR}/cache_store PROPERTIES COMPILE_OPTIONS "-ftree-vectorize")
  # Coverage feedback from the code under test, not only from the harnesses.
  foreach(lib gfmodel gfproto gfcache gfengine gfdaemon)
    target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link)
  endforeach()
endif()

add_custom_target(gf_fuzz_all)

# gf_fuzz_target(NAME LIBS...): tests/fuzz/fuzz_NAME.c. Readers that map their input see a
# heap copy instead (fuzz_common.c), so that a read past the end is caught.
function(gf_fuzz_target name)
  set(exe fuzz_${name})
  add_executable(${exe} ${GF_FUZZ_DIR}/fuzz_${name}.c ${GF_FUZZ_DIR}/fuzz_common.c ${GF_FUZZ_EXTRA})
  target_include_directories(${exe} PRIVATE ${GF_FUZZ_DIR})
  target_link_libraries(${exe} PRIVATE ${ARGN})
  target_link_options(${exe} PRIVATE -Wl,--wrap=mmap -Wl,--wrap=munmap)
  add_dependencies(gf_fuzz_all ${exe})
  set(corpus ${GF_FUZZ_DIR}/corpus/${name})
  if(GF_FUZZ)
    target_compile_options(${exe} PRIVATE -fsanitize=fuzzer)
    target_link_options(${exe} PRIVATE -fsanitize=fuzzer)
    set(dict "")
    if(EXISTS ${GF_FUZZ_DIR}/dict/${name}.dict)
      set(dict -dict=${GF_FUZZ_DIR}/dict/${name}.dict)
    endif()
    # New inputs go to a scratch corpus in the build tree; the committed one is only read.
    set(work ${CMAKE_CURRENT_BINARY_DIR}/fuzz_work/${name})
    add_test(NAME fuzz_${name}
             COMMAND sh -c "rm -rf \"$1\" && mkdir -p \"$1\" && exec \"$0\" \"$@\""
                     $<TARGET_FILE:${exe}> ${work} ${corpus} ${dict} -seed=1
                     -runs=${GF_FUZZ_RUNS} -max_total_time=${GF_FUZZ_SECONDS} -timeout=10
                     -rss_limit_mb=2048 -error_exitcode=1 -timeout_exitcode=1
                     -print_final_stats=1)
    set_tests_properties(fuzz_${name} PROPERTIES LABELS fuzz SKIP_RETURN_CODE 77
                         TIMEOUT 120)
  else()
    target_sources(${exe} PRIVATE ${GF_FUZZ_DIR}/replay_main.c)
    add_test(NAME fuzz_replay_${name} COMMAND ${exe} ${corpus})
    set_tests_properties(fuzz_replay_${name} PROPERTIES LABELS fuzz_replay
                         SKIP_RETURN_CODE 77 TIMEOUT 120)
  endif()
endfunction()

gf_fuzz_target(frame gfproto)
gf_fuzz_target(request gfdaemon)
set(GF_FUZZ_EXTRA ${GF_FUZZ_DIR}/fuzz_tensors.c)
gf_fuzz_target(pth gfmodel)
gf_fuzz_target(safetensors gfmodel)
gf_fuzz_target(gguf gfmodel)
set(GF_FUZZ_EXTRA "")
gf_fuzz_target(tokenizer gfmodel)
target_compile_definitions(fuzz_tokenizer PRIVATE
  GF_FUZZ_VOCAB="${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt")
gf_fuzz_target(vocab gfmodel)
foreach(t cache_page cache_manifest cache_store)
  gf_fuzz_target(${t} gfcache)
  target_include_directories(fuzz_${t} PRIVATE ${CMAKE_SOURCE_DIR}/cache_store)
endforeach()
