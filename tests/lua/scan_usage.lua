-- Drives lua/spoa_usage.lua's scanner under plain Lua 5.3 / 5.4, for
-- tests/unit/test_usage_lua.py: reads cases from stdin, each a line
-- "<chunk size> <length> <request bytes>" then <length> bytes of an answer;
-- feeds the answer in chunks of that size, as the filter does, estimates what
-- a stream did not report (as the filter does at the answer's end), and
-- prints "<input> <output> <model>" per case.
local usage = dofile(arg[1])
while true do
  local header = io.read("l")
  if header == nil then break end
  local size, length, request_bytes = header:match("^(%d+) (%d+) (%d+)$")
  size, length = tonumber(size), tonumber(length)
  local body = io.read(length)
  local seen = {}
  for at = 1, #body, size do
    usage.feed(seen, body:sub(at, at + size - 1))
  end
  usage.estimate(seen, request_bytes)
  print(string.format("%d %d %s", seen.input or 0, seen.output or 0, seen.model or "-"))
end
