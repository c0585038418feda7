# test_multihead_attention.cmake - when CMake finds PyTorch (bench/.venv-torch, or
# NABLA_TORCH_PYTHON), torch writes safetensors files of its own MultiheadAttention modules and
# the test loads them by name (strict) and compares the outputs; otherwise the test checks the
# names against the committed list in test_multihead_attention_ref.h alone.
set(NABLA_TORCH_PYTHON "${PROJECT_SOURCE_DIR}/bench/.venv-torch/bin/python" CACHE FILEPATH
    "a Python with PyTorch 2.x, for tests that compare with files torch writes")
if(TARGET test_multihead_attention AND EXISTS "${NABLA_TORCH_PYTHON}")
  execute_process(COMMAND "${NABLA_TORCH_PYTHON}" -c "import torch" RESULT_VARIABLE nabla_no_torch
                  OUTPUT_QUIET ERROR_QUIET)
  if(nabla_no_torch EQUAL 0)
    set(dir "${CMAKE_CURRENT_BINARY_DIR}/mha_torch")
    set(script "${CMAKE_CURRENT_LIST_DIR}/test_multihead_attention_ref.py")
    add_custom_command(OUTPUT "${dir}/default.state.safetensors"
                       COMMAND ${CMAKE_COMMAND} -E make_directory "${dir}"
                       COMMAND "${NABLA_TORCH_PYTHON}" "${script}" --safetensors "${dir}"
                       DEPENDS "${script}" VERBATIM
                       COMMENT "PyTorch writes MultiheadAttention state dicts")
    add_custom_target(test_multihead_attention_torch DEPENDS "${dir}/default.state.safetensors")
    add_dependencies(test_multihead_attention test_multihead_attention_torch)
    target_compile_definitions(test_multihead_attention PRIVATE NB_MHA_TORCH_DIR="${dir}")
    message(STATUS "test_multihead_attention: compares with files from ${NABLA_TORCH_PYTHON}")
  endif()
endif()
