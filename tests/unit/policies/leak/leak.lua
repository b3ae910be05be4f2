-- Each call must start clean: globals set by an earlier call are gone.
calls = (calls or 0) + 1

function decide(action)
  local seen = table.concat({
    tostring(x), tostring(calls), tostring(rawget(string, "myfield")),
    tostring(string.myfield), tostring(("").myfield), tostring(_G.y), tostring(math.myfield),
  }, ",")
  x = 1
  _G.y = 2
  pcall(function() string.myfield = "leak" end)
  pcall(function() math.myfield = "leak" end)
  pcall(function() getmetatable("").__index.myfield = "leak" end)
  pcall(function() rawset(string, "myfield", "leak") end)
  pcall(function() table.insert(string, "leak") end)
  return { verdict = "allow", rule = "leak", reason = seen }
end
