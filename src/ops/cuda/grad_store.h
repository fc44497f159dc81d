// How a CUDA backward stores an input gradient: added to what the buffer holds (the default: a
// gradient gathered from several consumers), or written over it (the only writer: the buffer needs
// no zeroing before, and the kernel no read of it).
#pragma once

namespace mslm::ops::cuda {

enum class GradStore { Add, Overwrite };

}  // namespace mslm::ops::cuda
