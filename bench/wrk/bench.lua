-- wrk script for bench/load.ts.
--
--   wrk -t1 -cC -dD -s bench/wrk/bench.lua URL -- TOKENS_FILE RATE [START]
--
-- TOKENS_FILE: one request per line, "<path>\t<bearer token>"; requests cycle
--   through the lines in order (one line = the same-token workload).
-- START: how many lines of the cycle earlier runs already sent (default 0); this
--   run goes on from there, and done() reports where it stopped ("next"). So
--   runs against one authorizer walk the tokens in one unbroken cycle: a run
--   that started again at line 1 would resend tokens sent moments before, which
--   the authorizer's token cache may then take (the all-different-tokens
--   workload would no longer be uncached).
-- RATE: offered load in requests/s for this thread (0 = as fast as the
--   connections allow: saturation). Pacing is a token bucket on the monotonic
--   clock: each request takes the next free send slot, so the offered rate
--   does not fall when responses get slower (as long as a connection is free).
-- errors.status counts answers >= 400: every request of a run must be allowed.
-- done() prints one line "RESULT {json}" with counts and latency percentiles (µs).
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } bench_ts;
  int clock_gettime(int clk, bench_ts *ts);
]]
local ts = ffi.new("bench_ts")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local requests = {}
local n = 0
-- Global, not local: done() reads it from the thread with thread:get("sent").
sent = 0
local interval = 0
local next_slot = nil
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  local rate = tonumber(args[2] or "0") or 0
  sent = tonumber(args[3] or "0") or 0
  for line in io.lines(file) do
    local path, token = line:match("^([^\t]+)\t(.+)$")
    if path then
      n = n + 1
      requests[n] = wrk.format("POST", path, { ["Authorization"] = "Bearer " .. token, ["Host"] = "router.bench", ["Content-Length"] = "0" })
    end
  end
  if n == 0 then error("no requests in " .. tostring(file)) end
  if rate > 0 then interval = 1000 / rate end
end

function request()
  local line = sent % n + 1
  sent = sent + 1
  return requests[line]
end

function delay()
  if interval == 0 then return 0 end
  local t = now_ms()
  if next_slot == nil or next_slot < t then next_slot = t end
  local d = next_slot - t
  next_slot = next_slot + interval
  return d
end

function done(summary, latency, req)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"next":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"stdev":%.1f}}\n',
    summary.requests, threads[1]:get("sent"), summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.stdev))
end
