# Configures and builds sdk/template against the Nabla installed in PREFIX (out of tree, only
# find_package(Nabla)), then runs CONFORMANCE --plugin on the plugin it built.
file(REMOVE_RECURSE ${BUILD})
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BUILD} -DCMAKE_PREFIX_PATH=${PREFIX}
                -DCMAKE_BUILD_TYPE=Release RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the template against ${PREFIX} failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the template failed (${rc})")
endif()
execute_process(COMMAND ${CONFORMANCE} --plugin ${BUILD}/nabla_plugin_template.so
                --report ${BUILD}/conformance-template.md RESULT_VARIABLE rc)
if(rc EQUAL 77)
  message(FATAL_ERROR "NABLA_SKIP: the template plugin has no device")
elseif(NOT rc EQUAL 0)
  message(FATAL_ERROR "nabla-conformance failed on the template plugin (${rc})")
endif()
