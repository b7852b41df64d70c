// A real OpenID Connect provider for the integration tests: panva's certified `oidc-provider`,
// configured from a JSON file and logged into over plain HTTP (no browser, no HTML forms).
//
//   node provider.mjs CONFIG.json [PORT]        (or OIDC_PEER_CONFIG / OIDC_PEER_PORT; port 0 = any)
//
// CONFIG.json: {"clients": [client metadata...], "accounts": {"ACCOUNT_ID": {claims...}}}.
// An account's `sub` claim is its subject (default: its ACCOUNT_ID).
//
// Once listening on 127.0.0.1 it prints ONE line to stdout:
//   {"issuer":"http://127.0.0.1:PORT","port":PORT}
//
// Headless login. The authorization endpoint redirects the user agent to `/interaction/UID`
// (which answers a JSON description of the pending prompt). Instead, the user agent (keeping
// cookies) GETs
//   /interaction/UID/login?account=ACCOUNT_ID   logs in as that account (and consents to
//                                               whatever a consent prompt asks), 303 back to
//                                               the provider, which 303s to the client's
//                                               redirect_uri with code & state;
//   /interaction/UID/abort                      the user declines: the client gets
//                                               error=access_denied.
// Consent is automatic: every grant is extended with all requested OIDC scopes and claims.
//
// With OIDC_PEER_EXIT_ON_STDIN_EOF=1 the process exits when its stdin closes, so it never
// outlives a test process that dies without killing it.

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const configPath = process.argv[2] || process.env.OIDC_PEER_CONFIG;
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json [PORT]  (or OIDC_PEER_CONFIG, OIDC_PEER_PORT)');
  process.exit(2);
}
// stdout carries the one JSON line and nothing else: oidc-provider's notices (console.info) and
// anything else logged go to stderr.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const port = Number(process.argv[3] ?? process.env.OIDC_PEER_PORT ?? 0);
const { clients = [], accounts = {} } = JSON.parse(readFileSync(configPath, 'utf8'));

if (process.env.OIDC_PEER_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

/** The subject of the account ACCOUNT_ID. */
const subjectOf = (accountId) => String(accounts[accountId]?.sub ?? accountId);

/** The account id whose subject is `sub`, if any. */
const accountBySubject = (sub) => Object.keys(accounts).find((id) => subjectOf(id) === sub);

// Fresh signing key and cookie keys on every start: nothing secret is committed.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomUUID(),
  alg: 'RS256',
  use: 'sig',
};

// Listen first: the issuer has to name the actual port.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const actualPort = server.address().port;
const issuer = `http://127.0.0.1:${actualPort}`;

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },

  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'picture', 'locale'],
    groups: ['groups'],
  },
  // Claims of the granted scopes go into the ID token too, not only to the UserInfo endpoint.
  conformIdTokenClaims: false,

  // PKCE with S256 only, required on every authorization code request.
  pkce: { methods: ['S256'], required: () => true },

  // Explicit lifetimes (in seconds), short of an hour: the defaults log a notice when used.
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 3600,
    Session: 3600,
  },

  features: {
    devInteractions: { enabled: false },
  },

  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  async findAccount(_ctx, sub) {
    const id = accountBySubject(sub);
    if (id === undefined) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { ...accounts[id], sub };
      },
    };
  },

  // Automatic consent: the session's grant (or a new one) gets every OIDC scope and claim the
  // request asks for.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant) {
      grant = new oidc.provider.Grant({
        clientId: oidc.client.clientId,
        accountId: oidc.session.accountId,
      });
    }
    const scopes = [...oidc.requestParamOIDCScopes];
    if (scopes.length) grant.addOIDCScope(scopes.join(' '));
    const claims = [...oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    await grant.save();
    return grant;
  },
});

function json(res, status, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Cache-Control', 'no-store');
  res.end(JSON.stringify(body));
}

/** Finishes the pending prompt (login or consent) as `accountId` would. */
async function finishPrompt(req, res, accountId) {
  const details = await provider.interactionDetails(req, res);
  const { prompt: { name, details: missing }, grantId, session, params } = details;
  if (name === 'login') {
    await provider.interactionFinished(req, res, {
      login: { accountId: subjectOf(accountId) },
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (name === 'consent') {
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    if (!grant) {
      grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    }
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    await provider.interactionFinished(req, res, {
      consent: { grantId: await grant.save() },
    }, { mergeWithLastSubmission: true });
    return;
  }
  json(res, 501, { error: `prompt ${name} is not implemented by the test peer` });
}

const providerCallback = provider.callback();
const interactionRoute = /^\/interaction\/([^/]+)(\/login|\/abort)?\/?$/;

handler = async (req, res) => {
  const url = new URL(req.url, issuer);
  const route = url.pathname.match(interactionRoute);
  if (!route || req.method !== 'GET') {
    providerCallback(req, res);
    return;
  }
  try {
    const [, , action] = route;
    if (action === '/login') {
      const account = url.searchParams.get('account');
      if (account === null || !Object.hasOwn(accounts, account)) {
        json(res, 400, { error: `unknown account ${JSON.stringify(account)}`, known: Object.keys(accounts) });
        return;
      }
      await finishPrompt(req, res, account);
    } else if (action === '/abort') {
      await provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
    } else {
      const { uid, prompt, params } = await provider.interactionDetails(req, res);
      json(res, 200, { uid, prompt, params });
    }
  } catch (err) {
    console.error('oidc peer: interaction failed:', err);
    if (!res.headersSent) {
      json(res, 400, { error: err.name ?? 'error', error_description: err.message });
    }
  }
};

provider.on('server_error', (_ctx, err) => console.error('oidc peer: server_error:', err));

process.stdout.write(`${JSON.stringify({ issuer, port: actualPort })}\n`);
