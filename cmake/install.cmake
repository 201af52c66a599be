# cmake --install: every program, the libraries with their public headers, goldfinch.pc,
# man pages made from --help, the Python client with its bindings, a systemd unit; and CPack's
# .deb (cpack -G DEB in the build directory).
include(GNUInstallDirs)
find_package(Python3 COMPONENTS Interpreter)

set(GF_PROGRAMS goldfinchd gf gf-run gf-convert gf-eval gf-tokenize gf-bench gf-cache gf-passkey
    gf-engine-bench gf-ranks-bench)
set(GF_DESC_goldfinchd "the GoldFinch daemon: ingest texts into a paged cache, answer questions")
set(GF_DESC_gf "command-line client of goldfinchd")
set(GF_DESC_gf-run "ingest and ask in one process, without a daemon")
set(GF_DESC_gf-convert "convert GoldFinch checkpoints to GGUF, or make random models")
set(GF_DESC_gf-eval "evaluate a model on tokens: logits, cache rows, loss")
set(GF_DESC_gf-tokenize "tokenize text with a model's vocabulary, and back")
set(GF_DESC_gf-bench "measure prefill and decode speed")
set(GF_DESC_gf-cache "inspect, verify and maintain a GoldFinch cache store")
set(GF_DESC_gf-passkey "pass-key retrieval benchmark over long contexts")
set(GF_DESC_gf-engine-bench "benchmarks of the engine: ingest, reuse, memory")
set(GF_DESC_gf-ranks-bench "ingest speed across MPI ranks")
set(GF_MAN_PAGES "")
foreach(p ${GF_PROGRAMS})
  if(NOT TARGET ${p})
    continue()
  endif()
  install(TARGETS ${p} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  set(page ${CMAKE_BINARY_DIR}/man/${p}.1)
  add_custom_command(OUTPUT ${page}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/man
    COMMAND ${CMAKE_COMMAND} -E env GF_NO_REEXEC=1 ${CMAKE_COMMAND} -DPROG=$<TARGET_FILE:${p}>
            -DNAME=${p} -DOUT=${page} -DSECTION=1 "-DDESC=${GF_DESC_${p}}"
            -P ${CMAKE_SOURCE_DIR}/cmake/gen_man.cmake
    DEPENDS ${p} ${CMAKE_SOURCE_DIR}/cmake/gen_man.cmake
    COMMENT "man page ${p}.1 from --help" VERBATIM)
  list(APPEND GF_MAN_PAGES ${page})
endforeach()
add_custom_target(man ALL DEPENDS ${GF_MAN_PAGES})
install(FILES ${GF_MAN_PAGES} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(PROGRAMS ${CMAKE_SOURCE_DIR}/cluster/gf-slurm DESTINATION ${CMAKE_INSTALL_BINDIR})

# Static libraries and the headers that make up their interfaces, under include/goldfinch.
install(TARGETS gfclient gfproto gfmodel gfcache gfpartition ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${CMAKE_SOURCE_DIR}/client/gfclient.h ${CMAKE_SOURCE_DIR}/protocol/protocol.h
              ${CMAKE_BINARY_DIR}/protocol/goldfinch.pb-c.h ${CMAKE_SOURCE_DIR}/model/goldfinch.h
              ${CMAKE_SOURCE_DIR}/cache_store/cache_store.h ${CMAKE_SOURCE_DIR}/partition/partition.h
              ${CMAKE_BINARY_DIR}/include/goldfinch_version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/goldfinch)
# goldfinch.pc finds the prefix from where it lies, so any --prefix works.
file(RELATIVE_PATH GF_PC_UP /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
configure_file(${CMAKE_SOURCE_DIR}/cmake/goldfinch.pc.in ${CMAKE_BINARY_DIR}/goldfinch.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/goldfinch.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The Python client and its bindings where the prefix's Python looks: Debian's own
# /usr/lib/python3/dist-packages for /usr, PREFIX/lib/python3.X/dist-packages elsewhere
# (/usr/local's is on Debian's sys.path). Chosen at install time, for --prefix.
if(Python3_FOUND)
  set(GF_PYVER python${Python3_VERSION_MAJOR}.${Python3_VERSION_MINOR})
  install(CODE "
    if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
      set(gf_py \"\${CMAKE_INSTALL_PREFIX}/lib/python3/dist-packages\")
    else()
      set(gf_py \"\${CMAKE_INSTALL_PREFIX}/lib/${GF_PYVER}/dist-packages\")
    endif()
    file(INSTALL ${CMAKE_SOURCE_DIR}/client/gf_client.py
                 ${CMAKE_BINARY_DIR}/protocol/python/goldfinch_pb2.py DESTINATION \"\${gf_py}\")")
endif()

# systemd: settings from /etc/default/goldfinchd (GOLDFINCH_* variables).
configure_file(${CMAKE_SOURCE_DIR}/daemon/goldfinchd.service.in
               ${CMAKE_BINARY_DIR}/goldfinchd.service @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/goldfinchd.service DESTINATION lib/systemd/system)

# cpack -G DEB: Depends from the programs' shared libraries (dpkg-shlibdeps), and what the
# Python client imports.
set(CPACK_PACKAGE_NAME goldfinch)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "GoldFinch maintainers <goldfinch@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "GoldFinch long-context inference daemon, client and tools")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "python3, python3-protobuf")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "openmpi-bin")
include(CPack)
