-- wrk script for bench/scale.py: registers instances 0..N-1 exactly once each, spread over S
-- services, then idles until the driver stops wrk.
--
--   wrk -t T -c C -d 1h -s bench/scale.lua URL -- <N> <S> <T> [first]
--
-- Instance i is `PUT /v1/services/s<i mod S>/instances/i<i>` with body
--   {"address":"10.<i/65536 mod 256>.<i/256 mod 256>.<i mod 256>","port":8080,
--    "tags":["v1"],"meta":{"version":"1.4.2"}}
-- Thread t (1..T) takes i = first + (t-1), first + (t-1) + T, ... below N. wrk runs for a fixed
-- time and cannot stop after a count, so once a thread has had an answer to each of its
-- registrations it prints "SCALE_THREAD_DONE <t>" (the driver sends SIGINT when all T did) and
-- keeps its connections busy with a GET /v1/live every 100 ms, which the counts below skip.
-- done() prints one line, "SCALE_RESULT {json}".

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  total = tonumber(args[1])
  services = tonumber(args[2])
  nthreads = tonumber(args[3])
  first = tonumber(args[4] or "0")
  if not total or not services or not nthreads or services < 1 or nthreads < 1 then
    error("usage: wrk ... -- <instances> <services> <threads> [first]")
  end
  -- This thread's share of first..total-1.
  local offset = first + thread_no - 1
  mine = 0
  if offset < total then
    mine = math.floor((total - 1 - offset) / nthreads) + 1
  end
  sent = 0
  ok = 0
  failed = 0
  sample_error = nil
  finished = false
  if mine == 0 then
    io.write("SCALE_THREAD_DONE " .. thread_no .. "\n")
    io.flush()
    finished = true
  end
  headers = { ["Content-Type"] = "application/json" }
end

function delay()
  if sent >= mine then
    return 100
  end
  return 0
end

function request()
  -- wrk calls request() once per thread before it connects (to check the request parses) and
  -- never sends what it got: that first call must not use up an instance.
  if not checked then
    checked = true
    return wrk.format("GET", "/v1/live")
  end
  if sent >= mine then
    return wrk.format("GET", "/v1/live")
  end
  local i = first + thread_no - 1 + sent * nthreads
  sent = sent + 1
  local body = string.format(
    '{"address":"10.%d.%d.%d","port":8080,"tags":["v1"],"meta":{"version":"1.4.2"}}',
    math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  return wrk.format("PUT", "/v1/services/s" .. (i % services) .. "/instances/i" .. i, headers, body)
end

function response(status, _headers, body)
  if status >= 200 and status <= 299 then
    -- Only a registration answers {"index":N}; the idle GET /v1/live does not count.
    if string.find(body or "", '"index"') then
      ok = ok + 1
    else
      return
    end
  else
    failed = failed + 1
    if not sample_error then
      sample_error = status .. " " .. string.sub(body or "", 1, 200)
    end
  end
  if not finished and ok + failed >= mine then
    finished = true
    io.write("SCALE_THREAD_DONE " .. thread_no .. "\n")
    io.flush()
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, _requests)
  local all_ok, all_failed, sample = 0, 0, nil
  for _, t in ipairs(threads) do
    all_ok = all_ok + (t:get("ok") or 0)
    all_failed = all_failed + (t:get("failed") or 0)
    sample = sample or t:get("sample_error")
  end
  local e = summary.errors
  io.write(string.format(
    'SCALE_RESULT {"ok":%d,"failed":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"timeouts":%d,"sample_error":%s}\n',
    all_ok, all_failed, e.connect, e.read, e.write, e.timeout, json_string(sample or "")))
end
