// The warp-synchronous operations, shared by the shim (emu_thread.h) and the runtime (scheduler.cpp).
#pragma once

namespace fl_emu {
enum WarpOp : int { kSyncWarp = 0, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };
}
