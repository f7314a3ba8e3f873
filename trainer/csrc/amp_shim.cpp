// C entry points to libtorch's device-generic autocast state (ATen/autocast_mode.h), which tch
// 0.26 does not wrap (it has CUDA's set_enabled only, and no dtype setter). Compiled by
// trainer/build.rs against the headers of the libtorch torch-sys links, so the C++ names are
// resolved by the compiler, not spelled by hand. Device types and scalar types cross as their
// int8_t codes (c10::DeviceType, c10::ScalarType); none of these functions throws.
#include <ATen/autocast_mode.h>

#include <cstdint>

namespace {
c10::DeviceType device_of(int8_t code) { return static_cast<c10::DeviceType>(code); }
}  // namespace

extern "C" {

void cggm_amp_set_dtype(int8_t device_type, int8_t dtype) {
  at::autocast::set_autocast_dtype(device_of(device_type), static_cast<c10::ScalarType>(dtype));
}

int8_t cggm_amp_get_dtype(int8_t device_type) {
  return static_cast<int8_t>(at::autocast::get_autocast_dtype(device_of(device_type)));
}

void cggm_amp_set_enabled(int8_t device_type, bool enabled) {
  at::autocast::set_autocast_enabled(device_of(device_type), enabled);
}

bool cggm_amp_is_enabled(int8_t device_type) {
  return at::autocast::is_autocast_enabled(device_of(device_type));
}

int32_t cggm_amp_increment_nesting() { return at::autocast::increment_nesting(); }

int32_t cggm_amp_decrement_nesting() { return at::autocast::decrement_nesting(); }

void cggm_amp_clear_cache() { at::autocast::clear_cache(); }

}  // extern "C"
