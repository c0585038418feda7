cmake_policy(SET CMP0057 NEW) # if(IN_LIST)
# Builds the Debian packages of the build tree BUILD_DIR with CPack into OUT and checks each
# package's files and dependencies with dpkg-deb: the runtime has the library and the cpu plugin
# and no GPU plugin, the dev package the headers, CMake package and pkg-config file, and each
# GPU plugin sits alone in its own package that depends on the runtime.
# GPU_PLUGINS: comma-separated names of the plugins that get packages of their own.
string(REPLACE "," ";" GPU_PLUGINS "${GPU_PLUGINS}")
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${CPACK} -G DEB -B ${OUT} --config ${BUILD_DIR}/CPackConfig.cmake
                RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cpack -G DEB failed (${rc}):\n${log}")
endif()

function(deb_check name)
  cmake_parse_arguments(A "" "DEPENDS" "HAS;LACKS" ${ARGN})
  file(GLOB deb ${OUT}/${name}_*.deb)
  if(NOT deb)
    message(FATAL_ERROR "no package ${name} in ${OUT}")
  endif()
  execute_process(COMMAND ${DPKG_DEB} -c ${deb} OUTPUT_VARIABLE files RESULT_VARIABLE rc)
  execute_process(COMMAND ${DPKG_DEB} -f ${deb} Depends OUTPUT_VARIABLE deps)
  message(STATUS "${name}: depends ${deps}")
  foreach(f ${A_HAS})
    if(NOT files MATCHES "${f}")
      message(FATAL_ERROR "${name} lacks ${f}; it holds:\n${files}")
    endif()
  endforeach()
  foreach(f ${A_LACKS})
    if(files MATCHES "${f}")
      message(FATAL_ERROR "${name} should not hold ${f}; it holds:\n${files}")
    endif()
  endforeach()
  if(A_DEPENDS AND NOT deps MATCHES "${A_DEPENDS}")
    message(FATAL_ERROR "${name} does not depend on ${A_DEPENDS}: ${deps}")
  endif()
endfunction()

deb_check(libnabla0 HAS "libnabla\\.so\\.0" "nabla/nabla_plugin_cpu_blas\\.so" "bin/nabla-info"
          LACKS "nabla_plugin_cuda" "nabla_plugin_opencl" "include/nabla\\.h" "libnabla\\.so( |\n)"
          DEPENDS "libopenblas0")
deb_check(libnabla-dev HAS "include/nabla\\.h" "include/nabla_plugin\\.h"
          "cmake/Nabla/NablaConfig\\.cmake" "pkgconfig/nabla\\.pc" "libnabla\\.so( |\n)"
          LACKS "nabla_plugin_" DEPENDS "libnabla0 \\(= ")
foreach(p ${GPU_PLUGINS})
  deb_check(nabla-plugin-${p} HAS "nabla/nabla_plugin_${p}\\.so" LACKS "libnabla\\.so"
            DEPENDS "libnabla0 \\(= ")
endforeach()
if("cuda" IN_LIST GPU_PLUGINS)
  deb_check(libnabla0 LACKS "cuda")
endif()
