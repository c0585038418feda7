/* nn.cl - tier-2 fused kernels (relu_backward, softmax family, optimizer steps). */
