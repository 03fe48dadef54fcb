import numpy as np
import oxccl

comm = oxccl.init()                                  # rank, size and root from the launcher
grads = np.full(1024, comm.rank, dtype=np.float32)
comm.all_reduce(grads, op="avg")                     # in place, on the array's own memory
print(f"rank {comm.rank} of {comm.size}: average of ranks = {grads[0]}")
comm.close()
