"""The GPU node: what it is, whether it fits, and the NVML that reads it.

``snapshot``  the node as typed values (GpuState, NodeSnapshot), JSON in and out; pure
``check``     check_node: a snapshot and a GPU spec -> NodeVerdict; pure
``nvml``      the only NVML access: one session, one error classification, probe_node
``sources``   where the node gate reads a node from: live NVML, a recorded file, the simulated node
``freed``     after an engine stops, wait until its GPUs are free again
``leases``    GPUs leased by UUID with one OS file lock each (xdist workers, parallel runs), an engine port,
              holder records and who ran beside whom (co-location)
``__main__``  ``python -m pytest_llmperf.topology snapshot | check`` (also ``python -m pytest_llmperf.node``)

``pynvml`` is imported only inside ``nvml``'s functions, so every module here
loads on a machine without a driver.
"""
