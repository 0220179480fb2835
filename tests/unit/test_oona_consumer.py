"""OonaConsumer's bookkeeping without a broker: after a rebalance it forgets the lag of the
partitions it no longer owns (a worker forwarding them would contradict the new owner)."""

from aiokafka import TopicPartition

from esper.oona.consumer import OonaConsumer


async def test_a_rebalance_forgets_the_lag_of_partitions_moved_away():
    seen = []
    consumer = OonaConsumer("127.0.0.1:1", ["t"], group_id="g", on_assign=seen.append)
    try:
        consumer.lag = {("t", 0): 5, ("t", 1): 7, ("u", 0): 3}
        owned = {TopicPartition("t", 1), TopicPartition("u", 0)}
        consumer._listener.on_partitions_assigned(owned)
        assert consumer.lag == {("t", 1): 7, ("u", 0): 3}
        assert seen == [frozenset(owned)]
    finally:
        await consumer.stop()  # never started: closes the client object only
