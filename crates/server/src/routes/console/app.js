// The console's sign-in: the tenant is the page's; tokens stay in memory only.
"use strict";
(function () {
  const tenant = document.body.dataset.tenant;
  const form = document.getElementById("sign-in");
  const status = document.getElementById("status");
  let access = null;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.textContent = "Signing in…";
    const data = new FormData(form);
    const email = data.get("email");
    const res = await fetch(`/v1/auth/${encodeURIComponent(tenant)}/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        grant_type: "password",
        email,
        password: data.get("password"),
      }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      status.textContent = body.detail || "Sign-in failed.";
      return;
    }
    access = body.access_token;
    const me = await fetch("/v1/auth/me", { headers: { authorization: `Bearer ${access}` } });
    // /v1/auth/me names the tenant and roles, not the e-mail: the one just accepted is it.
    status.textContent = me.ok ? `Signed in as ${email}.` : "Signed in.";
    form.hidden = true;
  });
})();
