"""The aggregator: rolling per-crossing window aggregates over event time.

Pure logic first, I/O last:

* :mod:`.windows`  window families and pane arithmetic (which pane, which windows, when closed);
* :mod:`.sketch`   the mergeable quantile sketch (DDSketch bins, sparse);
* :mod:`.pane`     one pane's exact aggregate and the merge that builds a window from panes;
* :mod:`.state`    one crossing's state: watermark, de-duplication, panes, what to emit;
* :mod:`.state_codec`  the state's bytes in the changelog (versioned JSON, no pickle);
* :mod:`.intake`   decode and validate a batch of Kafka messages; dead letters for the rest;
* :mod:`.checkpoint`  the durability protocol (what is written before an offset may commit);
* :mod:`.app`      the faust-streaming application that wires these to Kafka.
"""
