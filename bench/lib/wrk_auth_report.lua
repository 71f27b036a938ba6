-- wrk script for bench/api_bench.sh.
--
-- Sends the Authorization header given in the environment variable BENCH_AUTH (a user JWT for
-- iot-manager, a SAS token for the simulator) and, when the run ends, prints one line that the
-- shell script parses, so it does not depend on wrk's human-readable units ("1.23ms", "15.2k"):
--
--   BENCH_RESULT rps=... requests=... p50_us=... p90_us=... p99_us=... max_us=... mean_us=...
--                connect=... read=... write=... timeout=... status=...
--
-- `status` counts answers with a status >= 400 (wrk's "Non-2xx or 3xx responses").
--
-- BENCH_DELAY_MS, when set, makes every connection wait before each request (wrk's delay()
-- hook) for an exponentially distributed time of that mean, so 64 connections with 32 ms offer
-- about 2,000 requests/s as roughly Poisson arrivals: a load below saturation, without the
-- synchronised bursts a fixed delay would cause. wrk starts a request's latency clock when it
-- writes the request, after the wait.
-- No response() callback on purpose: defining one makes wrk parse every response in Lua.

local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delay_ms ~= nil and delay_ms > 0 then
  local threads = 0

  -- Runs in the main Lua state once per wrk thread: give each thread its own random sequence.
  function setup(thread)
    threads = threads + 1
    thread:set("bench_thread", threads)
  end

  function init(args)
    math.randomseed(os.time() * 100 + (bench_thread or 0))
  end

  function delay()
    return math.floor(-delay_ms * math.log(1 - math.random()) + 0.5)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "BENCH_RESULT rps=%.1f requests=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f "
      .. "connect=%d read=%d write=%d timeout=%d status=%d\n",
    summary.requests / seconds, summary.requests,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.timeout, e.status))
end
