"""The control channel: how the launchers of one job meet and agree (DESIGN.md decision 3).

`wire` is the frame format (length, HMAC-SHA256 under the job token, per-connection challenge
and sequence numbers); `messages` every message as a frozen type, and the codec that refuses
anything else; `connection` is one authenticated connection and the job's `Decision`;
`follower` holds what every member shares and the follower's side; `leader` the leader's side
(accept, PLAN, heartbeats, ABORT everywhere, the result); `meet` picks the role and returns the
agreed `World`. Nothing here starts or signals a process.
"""
