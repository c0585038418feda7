# Debian packages with CPack (`cpack -G DEB` in the build folder): libnabla0 (the library, the
# cpu plugin and the programs), libnabla-dev (headers, CMake package, pkg-config file,
# nabla-conformance), nabla-plugin-opencl / nabla-plugin-cuda and nabla-collective-mpi /
# nabla-collective-nccl, each on its own so that a machine without a GPU stack or MPI installs
# none of them. Install them with `apt-get install ./nabla*.deb`.
set(CPACK_PACKAGE_NAME nabla)
set(CPACK_PACKAGE_VENDOR "Nabla developers")
set(CPACK_PACKAGE_CONTACT "Nabla developers <nabla@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "tensor runtime with autograd and plugin backends")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libs)
# Library dependencies read from the ELF files; the BLAS is dlopen()ed, so it is named here.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)
# libnabla itself is found in the build tree (its package is a component dependency).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${PROJECT_BINARY_DIR}/lib)

set(CPACK_COMPONENTS_ALL runtime dev)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libnabla${PROJECT_VERSION_MAJOR})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS "libopenblas0 | libopenblas0-pthread")
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libnabla-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_COMPONENT_DEV_DEPENDS runtime)

get_property(_nabla_plugins GLOBAL PROPERTY NABLA_DEVICE_PLUGINS)
foreach(_c ${_nabla_plugins})
  if(_c STREQUAL "cpu_blas")
    continue()
  endif()
  string(TOUPPER ${_c} _C)
  list(APPEND CPACK_COMPONENTS_ALL ${_c})
  set(CPACK_DEBIAN_${_C}_PACKAGE_NAME nabla-plugin-${_c})
  set(CPACK_COMPONENT_${_C}_DEPENDS runtime)
endforeach()
# Collective backends (data-parallel training), each a package of its own too.
foreach(_c mpi nccl)
  if(TARGET nabla_collective_${_c})
    string(TOUPPER ${_c} _C)
    list(APPEND CPACK_COMPONENTS_ALL ${_c})
    set(CPACK_DEBIAN_${_C}_PACKAGE_NAME nabla-collective-${_c})
    set(CPACK_COMPONENT_${_C}_DEPENDS runtime)
  endif()
endforeach()
# The cuda plugin links the toolkit's libraries, which no Debian package provides here: its
# users bring the CUDA toolkit and driver themselves.
set(CPACK_DEBIAN_CUDA_PACKAGE_SHLIBDEPS OFF)
set(CPACK_DEBIAN_NCCL_PACKAGE_SHLIBDEPS OFF)
include(CPack)
