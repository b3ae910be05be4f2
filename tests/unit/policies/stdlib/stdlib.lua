-- Uses the libraries a policy may use; reports the results as one string.
function decide(action)
  local has_format, has_dump = false, false
  for name in pairs(string) do
    if name == "format" then has_format = true end
    if name == "dump" then has_dump = true end
  end
  local parts = {
    type(os.time()) == "number" and "time" or "notime",
    os.date("!%Y-%m-%d", 0),
    type(os.clock()) == "number" and "clock" or "noclock",
    string.format("%05.1f", 3.14159),
    table.concat({ "a", "b", "c" }, "-"),
    tostring(math.floor(2.7)),
    tostring(utf8.len("h\u{e9}llo")),
    tostring(has_format), tostring(has_dump),
    ("abc"):upper(),
    tostring(select("#", 1, 2, 3)),
    tostring((pcall(error, "x"))),
    math.type(1),
    tostring(math.random(1, 1)),
  }
  return { verdict = "allow", rule = "stdlib", reason = table.concat(parts, ",") }
end
