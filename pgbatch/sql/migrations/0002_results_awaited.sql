-- Archives notify producers awaiting results only while some producer says it awaits them:
-- a NOTIFY serialises the commits of every notifying transaction, which cost workers 10-30%
-- of their drain rate when sent for every archived batch whether anyone listened or not.
ALTER TABLE queue ADD COLUMN results_awaited_until timestamptz;
