-- Resource bombs, chosen by action.input.kind.
local bombs = {}

function bombs.table()
  local t, i = {}, 0
  while true do
    i = i + 1
    t[i] = { i }
  end
end

function bombs.string()
  local s = "x"
  while true do
    s = s .. s
  end
end

function bombs.rep()
  return string.rep("x", 1 << 40)
end

function bombs.loop()
  while true do end
end

-- pcall must not be a way around the budget, the deadline or the memory cap.
function bombs.pcall_loop()
  while true do
    pcall(function() while true do end end)
  end
end

function bombs.xpcall_loop()
  while true do
    xpcall(function() while true do end end, function(m) while true do end end)
  end
end

function bombs.pcall_memory()
  while true do
    pcall(bombs.string)
  end
end

function bombs.recursion()
  local function f(n) return f(n + 1) + 1 end
  return f(1)
end

function bombs.close()
  -- a to-be-closed variable whose close handler loops
  local guard <close> = setmetatable({}, { __close = function() while true do end end })
  while true do end
end

-- Backtracking patterns on long subjects: polynomial work inside one C call.
local subject = string.rep("a", 5000)

function bombs.redos_find() return subject:find(".-.-.-b") end
function bombs.redos_match() return subject:match("(a*)*b") end
function bombs.redos_gsub() return (subject:gsub("a-a-a-b", "")) end
function bombs.redos_gmatch()
  for m in subject:gmatch(".-.-b") do return m end
end
function bombs.redos_balance() return string.rep("(", 5000):find("%b()") end
function bombs.redos_backref() return subject:find("(a-)%1b") end
function bombs.redos_set()
  return subject:find("[" .. string.rep("x", 5000) .. "]")
end

function bombs.normal()
  return { verdict = "allow", rule = "normal", reason = "still works" }
end

function decide(action)
  return bombs[action.input.kind]()
end
