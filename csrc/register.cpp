// Operator schemas of the `mmcam` namespace and their CPU implementations.
#include <torch/library.h>

TORCH_LIBRARY(mmcam, m) {
}
