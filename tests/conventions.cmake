# Conventions of every program: --version prints the project version; goldfinchd's settings
# from GOLDFINCH_* variables (the flag wins) and llama-server's spellings.
set(GF_VERSION_PROGRAMS gf gf-run gf-convert gf-eval gf-tokenize gf-bench gf-cache gf-passkey
    gf-engine-bench gf-ranks-bench)
set(GF_VERSION_FILES "")
foreach(p ${GF_VERSION_PROGRAMS})
  if(TARGET ${p})
    list(APPEND GF_VERSION_FILES $<TARGET_FILE:${p}>)
  endif()
endforeach()
add_test(NAME conventions_cli
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/conventions_cli.sh ${PROJECT_VERSION}
          $<TARGET_FILE:goldfinchd> ${GF_VERSION_FILES})
set_tests_properties(conventions_cli PROPERTIES TIMEOUT 60 LABELS daemon)

# cmake --install into a temporary prefix, and what it installed used from there.
add_test(NAME install_prefix
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/install_prefix.sh ${CMAKE_BINARY_DIR} ${CMAKE_C_COMPILER}
          "${GF_SANITIZE}")
set_tests_properties(install_prefix PROPERTIES TIMEOUT 120 LABELS install)
