# Builds tests/consumer/project against the Nabla installed in PREFIX, with MODE "cmake"
# (find_package) or "pkgconfig" (pkg-config --cflags --libs nabla), in BUILD, then runs it.
file(REMOVE_RECURSE ${BUILD})
file(MAKE_DIRECTORY ${BUILD})
if(MODE STREQUAL "cmake")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BUILD} -DCMAKE_PREFIX_PATH=${PREFIX}
                  "-DCMAKE_C_FLAGS=${EXTRA_FLAGS}" RESULT_VARIABLE rc)
  if(rc EQUAL 0)
    execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD} RESULT_VARIABLE rc)
  endif()
else()
  # The .pc file names the configured prefix; point it at the scratch install instead.
  set(ENV{PKG_CONFIG_PATH} ${PREFIX}/${LIBDIR}/pkgconfig)
  execute_process(COMMAND ${PKG_CONFIG} --define-variable=prefix=${PREFIX} --cflags --libs nabla
                  OUTPUT_VARIABLE flags RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(rc EQUAL 0)
    separate_arguments(flags UNIX_COMMAND "${flags}")
    message(STATUS "pkg-config --cflags --libs nabla: ${flags}")
    separate_arguments(extra UNIX_COMMAND "${EXTRA_FLAGS}")
    execute_process(COMMAND ${CC} -std=c11 ${extra} ${SOURCE}/consumer.c -o ${BUILD}/consumer
                    ${flags} -Wl,-rpath,${PREFIX}/${LIBDIR} RESULT_VARIABLE rc)
  endif()
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the consumer (${MODE}) against ${PREFIX} failed (${rc})")
endif()
# Only the installed plugins: the consumer must work from the install alone.
set(ENV{NABLA_PLUGIN_PATH} ${PREFIX}/${LIBDIR}/nabla)
execute_process(COMMAND ${BUILD}/consumer RESULT_VARIABLE rc)
if(rc EQUAL 77)
  message(FATAL_ERROR "NABLA_SKIP: no cpu plugin installed")
elseif(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer (${MODE}) failed (${rc})")
endif()
