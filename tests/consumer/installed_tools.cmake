# Copies the install in PREFIX to MOVED (an install tree must work wherever it is copied), then,
# with no NABLA_* variable set, runs the copied nabla-info, which must load every plugin the
# build made (PLUGINS, comma-separated) from the copy, and the copied nabla-conformance on the
# template plugin built out of tree in TEMPLATE_SO.
string(REPLACE "," ";" PLUGINS "${PLUGINS}")
file(REMOVE_RECURSE ${MOVED})
file(COPY ${PREFIX}/ DESTINATION ${MOVED})
set(clean_env ${CMAKE_COMMAND} -E env --unset=NABLA_PLUGIN_PATH --unset=NABLA_DEVICE
    --unset=LD_LIBRARY_PATH --unset=NABLA_CPU_FALLBACK)

execute_process(COMMAND ${clean_env} ${MOVED}/bin/nabla-info OUTPUT_VARIABLE out
                ERROR_VARIABLE err RESULT_VARIABLE rc)
message(STATUS "nabla-info from ${MOVED}:\n${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the installed nabla-info failed (${rc})")
endif()
foreach(name ${PLUGINS})
  string(REGEX MATCH "plugin ${name} [^\n]*\n  file: ([^\n]*)" hit "${out}")
  if(NOT hit)
    message(FATAL_ERROR "the installed nabla-info did not load the ${name} plugin")
  endif()
  string(FIND "${CMAKE_MATCH_1}" "${MOVED}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "plugin ${name} came from ${CMAKE_MATCH_1}, not from the copy ${MOVED}")
  endif()
endforeach()

if(TEMPLATE_SO)
  execute_process(COMMAND ${clean_env} ${MOVED}/bin/nabla-conformance --plugin ${TEMPLATE_SO}
                  --report ${MOVED}/conformance-template.md RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "the installed nabla-conformance failed on ${TEMPLATE_SO} (${rc})")
  endif()
endif()
