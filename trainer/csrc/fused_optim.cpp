// C entry points to libtorch's fused optimiser kernels (aten::_fused_sgd_, _fused_adam_,
// _fused_adamw_), which tch 0.26 does not wrap. Each updates a flat weight buffer and its state in
// one pass over memory, where the same update written as tensor operations makes three to seven
// (trainer/src/optim.rs). Tensors cross as the at::Tensor pointers tch holds (torch-sys's
// C_tensor); a libtorch error is returned as text in `error` (NUL-terminated, truncated to
// `error_len`) with a nonzero result instead of unwinding into Rust.
#include <ATen/ATen.h>

#include <cstdio>
#include <exception>
#include <optional>

namespace {
template <typename F>
int guarded(char* error, size_t error_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}
}  // namespace

extern "C" {

// SGD with momentum (none when `momentum_buffer` is null) and L2 weight decay, no dampening:
// d = g + wd * w; buf = first ? d : momentum * buf + d; w -= lr * buf.
int cggm_fused_sgd(at::Tensor* weights, at::Tensor* grads, at::Tensor* momentum_buffer,
                   double weight_decay, double momentum, double lr, bool is_first_step,
                   char* error, size_t error_len) {
  return guarded(error, error_len, [&] {
    std::vector<at::Tensor> buffers;
    if (momentum_buffer != nullptr) buffers.push_back(*momentum_buffer);
    at::_fused_sgd_({*weights}, {*grads}, buffers, weight_decay, momentum, lr, 0.0, false, false,
                    is_first_step);
  });
}

// Adam (L2 weight decay) or AdamW (decoupled, `decoupled`), at the step count held in `step`
// (a one-element float tensor, already incremented for this step), without amsgrad.
int cggm_fused_adam(at::Tensor* weights, at::Tensor* grads, at::Tensor* exp_avg,
                    at::Tensor* exp_avg_sq, at::Tensor* step, double lr, double beta1,
                    double beta2, double weight_decay, double eps, bool decoupled, char* error,
                    size_t error_len) {
  return guarded(error, error_len, [&] {
    if (decoupled) {
      at::_fused_adamw_({*weights}, {*grads}, {*exp_avg}, {*exp_avg_sq}, {}, {*step}, lr, beta1,
                        beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_({*weights}, {*grads}, {*exp_avg}, {*exp_avg_sq}, {}, {*step}, lr, beta1,
                       beta2, weight_decay, eps, false, false);
    }
  });
}

}  // extern "C"
