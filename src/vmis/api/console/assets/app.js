// The console's entry: sign in and out, the views by the page's #fragment, the event stream.

import { ApiError, ROLES, call, get, whenSignedOut } from './api.js';
import { auditView } from './audit.js';
import { connect, disconnect } from './events.js';
import { vmList } from './vmlist.js';
import { vmPane } from './vmpane.js';

const $ = (id) => document.getElementById(id);
let account = null;
let unsubscribe = [];

function showSignIn(reason) {
  account = null;
  disconnect();
  unsubscribe.forEach((f) => f());
  unsubscribe = [];
  $('view').replaceChildren();
  for (const id of ['views', 'sign-out', 'live']) $(id).hidden = true;
  $('who').textContent = '';
  $('sign-in-error').textContent = reason || '';
  $('sign-in-view').hidden = false;
  $('token').focus();
}

function route() {
  if (!account) return;
  unsubscribe.forEach((f) => f());
  const view = $('view');
  const [, what, name] = window.location.hash.split('/');
  if (what === 'vm' && name) unsubscribe = vmPane(view, decodeURIComponent(name), account);
  else if (what === 'audit' && ROLES[account.Role] >= ROLES.Administrator) unsubscribe = auditView(view);
  else unsubscribe = vmList(view, account);
  const heading = view.querySelector('h2');
  if (heading) { heading.tabIndex = -1; heading.focus(); }
}

async function start() {
  try {
    account = await get('/v1/account');
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) showSignIn('');
    else showSignIn(error.message);
    return;
  }
  $('sign-in-view').hidden = true;
  $('views').hidden = false;
  $('sign-out').hidden = false;
  $('audit-link').hidden = ROLES[account.Role] < ROLES.Administrator;
  $('who').textContent = `Signed in as ${account.Name} (${account.Role})`;
  connect($('live'));
  route();
}

// the first refusal says why (its token was removed); calls still on their way say less
whenSignedOut((message) => { if (account) showSignIn(message); });
window.addEventListener('hashchange', route);

$('sign-in-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await call('POST', '/console/session', { token: $('token').value });
    $('token').value = '';
    await start();
  } catch (error) {
    $('sign-in-error').textContent = error.message;
  }
});

$('sign-out').addEventListener('click', async () => {
  try { await call('DELETE', '/console/session'); } catch { /* signed out either way */ }
  showSignIn('Signed out.');
});

start();
